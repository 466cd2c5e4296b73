"""``micafence bench``: what micafence costs, next to the bare app and the naive alternative."""
