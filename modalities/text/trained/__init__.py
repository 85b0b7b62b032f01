"""text trained"""
