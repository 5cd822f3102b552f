# Conformance route "ratelimit": calls per caller counted in the host's store.
# The same route exists for every SDK (routes/<sdk>/ratelimit.*);
# tests/sdk/test_store_conformance.py drives each through its runtime.
use strict;
use warnings;

my $LIMIT = 3;

sub on_request {
    my ($req) = @_;
    my $n = eval { $req->store->incr('rate:' . $req->from_uri, 1, 60) };
    if (!defined $n) {
        $req->reply(503, 'Store unavailable');
        return;
    }
    if ($n > $LIMIT) {
        $req->reply(403, 'Over limit');
        return;
    }
    $req->reply(200, "n=$n");
}

1;
