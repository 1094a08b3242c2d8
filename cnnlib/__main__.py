import sys

from cnnlib.cli import main

sys.exit(main())
