# Conformance route "broken": fails to load (the missing semicolon on line 6
# is a syntax error Perl reports at line 7).
use strict;
use warnings;

sub on_request {
    my ($req) = @_
    $req->reply(200);
}

1;
