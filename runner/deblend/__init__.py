"""Running deblenders: resolve the revisions, build their environments behind the sandbox,
deblend every blend with both and measure each against its truth."""
