import sys

from napari_medattn.cli import main

sys.exit(main())
