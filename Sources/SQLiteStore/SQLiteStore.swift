// Module SQLiteStore.
