import sys

from robvae.cli import main

sys.exit(main())
