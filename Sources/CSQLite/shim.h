#ifndef LIVEMOUNT_CSQLITE_SHIM_H
#define LIVEMOUNT_CSQLITE_SHIM_H
#include <sqlite3.h>
#endif
