from mediaserver.store.store import SessionChange, Store, new_session_row

__all__ = ["Store", "SessionChange", "new_session_row"]
