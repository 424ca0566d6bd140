"""GitHub at the edge: the App's and installations' clients (``auth``), every call the
bot makes (``client``) and retries of what GitHub may fail transiently (``resilience``)."""
