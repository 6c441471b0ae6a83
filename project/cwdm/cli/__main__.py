"""``python -m cwdm.cli``: the ``cwdm`` command."""

from . import main

main()
