"""Peers the served graph is measured against in the same run: the same model, decode and top-5
behind other serving stacks (bench/README.md, "Peers")."""
