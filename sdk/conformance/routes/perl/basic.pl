# Conformance route "basic": behaviour chosen by the request-URI user part.
# Every SDK's version of this route must behave identically (see ../README.md).
use strict;
use warnings;

sub on_request {
    my ($req) = @_;
    my $user = $req->ruri_user;
    if ($user eq 'reply') {
        $req->reply(486, 'Busy Here');
    } elsif ($user eq 'relay') {
        $req->record_route;
        $req->relay(['sip:a@b.example', 'sip:c@d.example'], mode => 'serial', timeout => 5);
    } elsif ($user eq 'relay1') {
        $req->relay('sip:one@b.example');
    } elsif ($user eq 'redirect') {
        $req->redirect(['sip:x@y.example']);
    } elsif ($user eq 'drop') {
        $req->drop;
    } elsif ($user eq 'edit') {
        $req->set_ruri('sip:new@host.example');
        $req->set_header('X-A', 1);
        $req->add_header('X-B', 2);
        $req->remove_header('X-C');
    } elsif ($user eq 'hdr') {
        my @multi = $req->headers('x-multi');
        $req->reply(200, 'OK', [['X-Echo', $req->header('X-In') // 'none'],
                                ['X-Count', scalar @multi]]);
    } elsif ($user eq 'info') {
        $req->reply(200, join '|', $req->method, $req->ruri, $req->ruri_host, $req->from_uri,
                    $req->from_tag, $req->to_uri, $req->call_id, $req->cseq, $req->source_ip,
                    $req->source_port, $req->transport, ($req->in_dialog ? 'yes' : 'no'),
                    $req->body);
    } elsif ($user eq 'vars') {
        $req->vars->{count} = ($req->vars->{count} // 0) + 1;
        $req->relay;
    } elsif ($user eq 'boom') {
        die "boom\n";
    }
    # any other user: no verbs at all (the route "just returns")
}

1;
