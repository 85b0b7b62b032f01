"""text sae"""
