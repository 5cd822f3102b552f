# Conformance route "allhooks": on_request, on_failure and on_reply.
use strict;
use warnings;

sub on_request {
    my ($req) = @_;
    $req->relay('sip:first@b.example');
}

sub on_failure {
    my ($req, $reply) = @_;
    if ($reply->code == 486) {
        $req->relay('sip:voicemail@b.example');
    } else {
        $req->reply($reply->code, 'Failed: ' . $reply->reason);
    }
}

sub on_reply {
    my ($req, $reply) = @_;
    $req->set_header('X-Seen', $reply->code);
    $req->drop if ($reply->header('X-Drop') // '') eq 'yes';
}

1;
