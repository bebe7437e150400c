"""The media plane: ICE-lite, DTLS-SRTP and forwarding on one UDP port per worker.

Imports nothing from ``actors`` or the gateway (see DESIGN.md, Boundaries).
"""
