"""One module per reviewed paper: its offline model(s) and its online policy (imports only `gpusched`)."""
