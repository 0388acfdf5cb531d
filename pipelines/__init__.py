"""The render pipeline, by stage of the flow.

job -> media -> conditioning -> engine (+ acceleration, parallel) -> outputs.
"""
