//! A TCP relay between a client and a service, to count bytes or cut a connection the way a crash does.
