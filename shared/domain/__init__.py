"""The billing domain: pure rules over money, time, plans, subscriptions and invoices.

Nothing here performs I/O or reads the wall clock; every rule takes the instant it acts at.
"""
