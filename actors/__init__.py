"""Ray actors of the control plane: thin shells over ``mediaserver.control``.

Every Ray call lives in ``actors.cluster``; the classes here never import Ray.
"""
