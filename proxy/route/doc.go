// Package route resolves a repository name (and containerd's ?ns= mirror parameter) to the
// configured route that serves it: a pull route (a read-only cache of one upstream registry) or a
// push route (hosted repositories). Resolution is a pure function over a closed table: the
// longest matching prefix wins, and a name no route claims is never tried against upstreams in
// turn (that would be dependency confusion).
package route
