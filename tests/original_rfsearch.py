"""The original search code's rate helpers, transcribed for the tests (never imported from rfdeploy).

From RFNext ``local_searcher/utils.py`` and the older mmcv ``rfsearch/utils.py``: the research format and
G2L expand a centre dilation with these.
"""


def value_crop(d, mind, maxd):
    """Clip to [mind, maxd]."""
    if d < mind:
        d = mind
    elif d > maxd:
        d = maxd
    return d


def expands_rate(d, config):
    """Three values, centre clipped too, never de-duplicated."""
    e = config["exp_rate"]
    return [value_crop(int(round((1 - e) * d)), config["mmin"], config["mmax"]),  # noqa: RUF046 (as written)
            value_crop(d, config["mmin"], config["mmax"]),
            value_crop(int(round((1 + e) * d)), config["mmin"], config["mmax"])]  # noqa: RUF046
