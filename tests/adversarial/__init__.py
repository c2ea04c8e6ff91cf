"""Adversarial tier: a stateful property test (hypothesis) that drives real servers, real
consumers and real faults, and accounts for every acknowledged message."""
