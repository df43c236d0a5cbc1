"""SimPy serving engines and baseline policies (imports only `gpusched`)."""
