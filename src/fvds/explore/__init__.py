"""A Microscope-style static explorer of an fvds dataset: the map, a page per layer, a page per
unit. ``build_site`` is the whole API; ``fvds explore`` calls it."""

from fvds.explore.site import SiteReport, build_site, check_site_dir

__all__ = ["SiteReport", "build_site", "check_site_dir"]
