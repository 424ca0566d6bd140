"""The runner: deblend blend sets with two scarlet revisions and measure them against truth."""
