"""Dynamic mixture of experts (ADR-0004): the ``dynmoe`` ffn, the ``dynsmha`` mixer and the
``expert_reset`` callback. Routing and sparse dispatch come from ``ponderkit.plugins.routing``;
``experts`` (stacked expert weights) registers nothing.
"""
