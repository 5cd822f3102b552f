# Conformance route "services": the service verbs and host calls (see ../README.md).
use strict;
use warnings;

sub on_request {
    my ($req) = @_;
    my $user = $req->ruri_user;
    if ($req->method eq 'REGISTER') {
        $req->authenticate('example.com', password => 'secret');
        $req->save(max_expires => 3600);
    } elsif ($user eq 'local') {
        $req->lookup;
    } elsif ($user eq 'away') {
        $req->lookup(code => 480, reason => 'Temporarily Unavailable', timeout => 20);
    } elsif ($user eq 'nat') {
        $req->fix_contact;
        $req->relay;
    } elsif ($user eq 'cap') {
        my $n = $req->dialog->count('caller', $req->from_uri);
        return $req->reply(486, 'Too many calls') if $n >= 2;
        $req->add_profile('caller', $req->from_uri);
        $req->limit_duration(3600);
        $req->relay;
    } elsif ($user eq 'where') {
        my $found = $req->registrar->lookup('sip:bob@example.com');
        $req->reply(200, sprintf('n=%d first=%s', scalar @$found,
                                 @$found ? $found->[0]{contact} : ''));
    } elsif ($user eq 'who') {
        $req->reply(200, 'user=' . $req->auth_user);
    } elsif ($user eq 'strict') {
        $req->authenticate('example.com', { ha1 => '5f4dcc3b5aa765d61d8327deb882cf99',
                                            algorithms => ['SHA-256', 'MD5'], identity => 0 });
        $req->add_profile('all');
        $req->relay;
    }
}

sub on_reply {
    my ($req, $reply) = @_;
    $req->fix_contact;
}

1;
