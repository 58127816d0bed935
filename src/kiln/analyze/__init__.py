"""What ``kiln inspect`` finds out about a model, without loading it where it can avoid to.

facts.ModelFacts            the result (pydantic; ``model_dump_json`` is the ``--json`` output)
inspect.inspect_model(src)  a resolved source or a path -> ModelFacts
render.facts_table(facts)   a rich table for people
"""
