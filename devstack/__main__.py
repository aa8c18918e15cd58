"""``python -m devstack`` (what ``make run`` runs): the whole service on one machine."""

from devstack.launcher import main

if __name__ == "__main__":
    main()
