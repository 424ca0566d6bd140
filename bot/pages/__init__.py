"""Pages at stable addresses (``serve``): the trend page (``trend_page``, from
``trends``' data), redirects to the latest report, the scripts under ``static/``, and the
trend page as a static site in the store (``site``)."""
