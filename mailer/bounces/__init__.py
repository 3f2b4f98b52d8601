"""Use case of the way back: apply a returned message (bounce, complaint, auto-reply) or a
provider's event to the delivery it is about and the address it names."""

from mailer.bounces.apply import SOURCES, Applied, Disposition, apply_event, apply_returned
from mailer.bounces.ports import ReturnStore
from mailer.bounces.rates import Level, ReturnRates
from mailer.bounces.rules import SETTLE, Decision, decide, soft_bounces

__all__ = ["SETTLE", "SOURCES", "Applied", "Decision", "Disposition", "Level", "ReturnRates",
           "ReturnStore", "apply_event", "apply_returned", "decide", "soft_bounces"]
