"""``python -m monorec``: the CLI (how the server starts its replica processes)."""

from monorec.cli import main

raise SystemExit(main())
