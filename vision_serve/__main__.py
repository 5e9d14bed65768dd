import sys

from vision_serve.cli import main

sys.exit(main())
