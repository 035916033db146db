#ifndef LIVEMOUNT_CCURL_SHIM_H
#define LIVEMOUNT_CCURL_SHIM_H
#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call: these typed static inline
// wrappers pass each argument type libcurl documents for the option (curl_easy_setopt(3), curl_easy_getinfo(3)).

/// The write callback type of CURLOPT_WRITEFUNCTION and CURLOPT_HEADERFUNCTION.
typedef size_t (*livemount_curl_write_callback)(char *data, size_t size, size_t count, void *context);

static inline CURLcode livemount_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode livemount_curl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode livemount_curl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode livemount_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode livemount_curl_setopt_write_callback(CURL *handle, CURLoption option,
                                                            livemount_curl_write_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode livemount_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode livemount_curl_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}
#endif
