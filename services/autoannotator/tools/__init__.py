"""Operator commands that are not services: broker, produce, tail, up, audit."""
