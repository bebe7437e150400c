"""Control-plane logic as plain classes; the Ray actors in ``actors/`` are thin shells over these."""
