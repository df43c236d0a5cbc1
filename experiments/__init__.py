"""One module per reproduced result: runs it and writes CSV + PNG + a markdown table against the paper."""
