import sys

from fairref.cli import main

sys.exit(main())
