"""``python -m kface_cli`` (also what ``torchrun ... -m kface_cli train`` runs)."""

from kface_cli.cli import main

if __name__ == "__main__":
    main()
