from mediaserver.store.store import SessionChange, Store

__all__ = ["Store", "SessionChange"]
