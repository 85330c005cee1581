"""Hydra configuration tree, installed as package data so `pkg://involution.conf` finds it."""
