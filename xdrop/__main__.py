import sys

from xdrop.cli import main

sys.exit(main())
