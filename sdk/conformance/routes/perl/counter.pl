# Conformance route "counter": host key/value calls inside an event.
use strict;
use warnings;

sub on_request {
    my ($req) = @_;
    my $store = $req->store;
    if ($req->ruri_user eq 'err') {
        $store->get('forbidden');    # the transcript answers with an error
        $req->reply(500, 'unreachable');
        return;
    }
    my $n = $store->incr('calls', 1);
    my $last = $store->get('last');
    $store->set('last', $req->ruri_user, 60);
    $req->reply(200, sprintf('n=%d last=%s', $n, $last // ''));
}

1;
