"""Development tools: tiny random models, benchmarks, parity against the official code's golden files. Nothing in the
render path imports this package."""
