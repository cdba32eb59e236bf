"""The OpenAI-compatible facade over the queue: ``requests`` turns a request into jobs (its
structured-output fields through ``output_types``), ``responses`` turns finished jobs into
answers, ``streaming`` relays their tokens as server-sent events, and ``service`` runs a
request from submission to answer for the routes (``api.routes.openai``).
"""
