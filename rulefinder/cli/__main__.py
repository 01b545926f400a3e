"""``python -m rulefinder.cli``: the same as the ``rulefinder`` command."""

from rulefinder.cli import app

app(prog_name="rulefinder")
