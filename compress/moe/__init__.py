"""Mixture-of-Experts conversion of dense FFN blocks (LaDiMo): experts, routers, routing policies."""
