"""The compiled serving engine: a numba transcription of the SimPy engine's step mode on flat arrays.

It covers colocated and prefill/decode-disaggregated instances of the vLLM V1-like, vLLM V0, Sarathi-Serve
and static-batching schedulers, and colocated MC-SF, WAIT and Nested WAIT, on an H100-format profile behind
named routers, with or without multi-round sessions (a round released a think time after its predecessor
finishes), and gives per-request and per-step results identical to :func:`simulators.serving.simulate` in
``step`` mode, bit for bit. :func:`simulators.serving.simulate` uses it in ``fast`` mode when
:func:`~simulators.compiled.driver.unsupported_reason` returns None. A policy plugs in here only through
:class:`gpusched.policy.CompiledRule`: the engine carries a transcription of its rule (today MC-SF's, WAIT's
and Nested WAIT's), checked bit for bit against the Python policy; every other policy runs on the SimPy
engine. Driver: :mod:`.driver`; loop: :mod:`.kernel`.
"""
