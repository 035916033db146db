#ifndef LIVEMOUNT_CCURL_SHIM_H
#define LIVEMOUNT_CCURL_SHIM_H
#include <curl/curl.h>
// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call; the repository's HTTP
// source adds typed static inline wrappers here.
#endif
