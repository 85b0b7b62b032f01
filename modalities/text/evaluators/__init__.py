"""text evaluators"""
